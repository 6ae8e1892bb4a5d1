"""Dock widgets (Qt/magicgui). Only this package and the thin npe2 entry points touch Qt."""
