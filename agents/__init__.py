"""Installed as `visionstream.agents` (see setup.cfg); imported as a top-level `agents`, it steps aside."""

if __name__ == "agents":
    from visionstream.shadowing import yield_to_installed

    yield_to_installed(__name__, __file__)
