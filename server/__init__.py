"""The coordinator side: the Flower ServerApp, its round loop, state and report (``server.app``)."""
