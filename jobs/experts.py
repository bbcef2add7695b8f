"""Ray job entrypoint: the experts stage alone (as ``selma-ray run --stages experts``)."""

import sys

from selma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--stages", "experts", *sys.argv[1:]]))
