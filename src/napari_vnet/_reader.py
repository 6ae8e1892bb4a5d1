"""npe2 reader entry point (placeholder until the IO issue lands)."""


def napari_get_reader(path):
    return None
