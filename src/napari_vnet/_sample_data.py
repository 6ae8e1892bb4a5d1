"""npe2 sample-data entry point (placeholder until the sample-data issue lands)."""


def phantom_ct():
    return []
