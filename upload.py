"""``python upload.py SOURCE... --bucket B``: bulk load images into S3 and image_info (see --help)."""

import sys

from visionstream.bulk.upload import main

if __name__ == "__main__":
    sys.exit(main())
