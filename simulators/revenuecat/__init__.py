"""A RevenueCat-compatible provider simulator for tests, demos and benchmarks.

``ProviderState`` (pure state and operations) lives in ``state``; ``SimulatorServer`` and
``create_simulator_app`` (real HTTP) in ``server``; ``python -m simulators.revenuecat`` serves it.
"""

from simulators.revenuecat.server import Delivery, SimulatorServer, create_simulator_app
from simulators.revenuecat.state import Fault, ProviderState, ReceiptResult, SimulatorError

__all__ = [
    "Delivery",
    "Fault",
    "ProviderState",
    "ReceiptResult",
    "SimulatorError",
    "SimulatorServer",
    "create_simulator_app",
]
