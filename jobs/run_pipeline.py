"""Ray job entrypoint: the whole SELMA pipeline (same arguments as ``selma-ray run``).

    ray job submit --working-dir . -- python jobs/run_pipeline.py --config configs/sd15.yaml \
        --run-dir s3://my-bucket/selma/run1
"""

import sys

from selma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
