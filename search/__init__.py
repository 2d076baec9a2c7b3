"""autoprompt's built-in search spaces, installed with the package as ``autoprompt.builtin_spaces``
(one copy: this folder); ``--space <name>`` reads ``<name>.yaml``."""
