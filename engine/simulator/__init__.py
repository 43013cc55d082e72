"""A RevenueCat-compatible provider simulator for tests, demos and benchmarks.

``ProviderState`` (pure state and operations) lives in ``state``; ``SimulatorServer`` and
``create_simulator_app`` (real HTTP) in ``server``; ``python -m engine.simulator`` serves it.
"""

from engine.simulator.server import Delivery, SimulatorServer, create_simulator_app
from engine.simulator.state import Fault, ProviderState, ReceiptResult, SimulatorError

__all__ = [
    "Delivery",
    "Fault",
    "ProviderState",
    "ReceiptResult",
    "SimulatorError",
    "SimulatorServer",
    "create_simulator_app",
]
