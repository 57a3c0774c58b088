"""Preset option files (TOML) shipped with the package: launcher, tiny, quickstart."""
