import sys

from ingest_pipeline.cli.main import main

sys.exit(main())
