"""Sub-commands of the ``napari-vnet`` CLI.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs (or for ``--help``), so
``napari-vnet info`` never imports Qt and ``predict`` never imports napari.
"""

#: command name -> module name inside this package, in the order ``--help`` lists them
COMMANDS = {
    "info": "info",
    "predict": "predict",
    "evaluate": "evaluate",
    "list": "list_weights",
    "train": "train",
    "export-dataset": "export_dataset",
    "import-weights": "import_weights",
    "export-weights": "export_weights",
    "demo": "demo",
    "napari-readers": "napari_readers",
}


def add_threads_argument(parser) -> None:
    """``--threads N`` (predict, train, evaluate): the run's compute threads."""
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="compute threads (torch intra-op, SimpleITK); default or 0: chosen from the "
        "cores this process may use (affinity, cgroup quota), its helper threads and the "
        "load (-v logs the choice)",
    )  # fmt: skip
