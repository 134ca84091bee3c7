"""`python -m mltrain.data.curate CONFIG`: the spark-submit job, run by Python directly."""

import sys

from mltrain.data.curate.job import main

sys.exit(main())
