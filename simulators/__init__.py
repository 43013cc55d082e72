"""Simulators of the outside systems the engine talks to, served over real HTTP: a
RevenueCat-compatible provider and a fake Open edX LMS (tests and the demo use them)."""
