import sys

from osmi_ee.bench.cli import main

sys.exit(main())
