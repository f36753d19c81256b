"""Run the pipeline CLI in this process and print its peak resident memory (for memory benchmarks).

    python bench/peak_rss.py run RECIPE [args...]   ->  last line: peak_rss_mib=<float>
"""

import resource
import sys

from pipeline.__main__ import main

code = main(sys.argv[1:])
print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
sys.exit(code)
