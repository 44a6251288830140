"""Hydra configs (a package so that they ship with non-editable installs and compose by module name)."""
