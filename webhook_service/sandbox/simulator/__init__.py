"""A FreshBooks stand-in for tests and operators.

Written independently of the service on purpose: it encodes FreshBooks' facts
(and, where they are undocumented, the harsher reading) so it can catch the
service's mistakes rather than mirror them.
"""

from .app import create_app
from .server import SimulatorServer
from .state import SimulatorState

__all__ = ["SimulatorServer", "SimulatorState", "create_app"]
