"""npe2 writer entry points (placeholder until the IO issue lands)."""


def write_labels(path, data, meta):
    raise NotImplementedError("writing is not implemented yet")


def write_image(path, data, meta):
    raise NotImplementedError("writing is not implemented yet")
