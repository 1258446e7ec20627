"""``python -m cam_runtime``: the ``camr`` command line."""

from cam_runtime.cli import main

if __name__ == "__main__":
    main()
