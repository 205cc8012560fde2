"""hw_daemon: the ZeroMQ daemon between delgrad's training loop and (emulated) BrainScaleS-2.

Run ``python -m hw_daemon --backend emulator --bind tcp://127.0.0.1:5555``. The wire protocol
lives in :mod:`delgrad.hardware.protocol` (shared with the client); request handling in
:mod:`hw_daemon.server`; backends in :mod:`hw_daemon.backends`.
"""

from hw_daemon.server import Daemon, Limits, serve

__all__ = ["Daemon", "Limits", "serve"]
