"""Installed as `visionstream.tables` (see setup.cfg); imported as a top-level `tables`, it steps aside."""

if __name__ == "tables":
    from visionstream.shadowing import yield_to_installed

    yield_to_installed(__name__, __file__)
