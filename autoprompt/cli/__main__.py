"""python -m autoprompt.cli"""

from autoprompt.cli import main

main()
