"""autoprompt's built-in tasks and their data, installed with the package as ``autoprompt.builtin_tasks``
(one copy: this folder). Each ``<name>.py`` defines ``task``; ``autoprompt optimize <name>`` runs it."""
