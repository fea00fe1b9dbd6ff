"""`python -m ftcourse ...`: the `ftcourse` command without its console script.

Where the venv's scripts folder is not on PATH (Windows PowerShell without activation), learners run
`.venv\\Scripts\\python -m ftcourse doctor`; tests/test_setup_page.py runs it the same way.
"""

import sys

from ftcourse.cli import main

if __name__ == "__main__":  # importing this module (tests/test_imports.py does) runs nothing
    sys.exit(main())
