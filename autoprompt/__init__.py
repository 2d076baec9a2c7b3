"""autoprompt: find the prompt that makes a local language model do a labelled task best."""

from __future__ import annotations

from autoprompt.compare import Comparison, compare_methods
from autoprompt.data_task import split_examples
from autoprompt.demo_study import DemoStudy, DemoStudyConfig, study_demonstrations
from autoprompt.errors import AutoPromptError, ModelError, PromptFileError, TaskError, TemplateError
from autoprompt.models import LanguageModel, load_model
from autoprompt.optimizer import SearchResult, optimize
from autoprompt.predict import Predictor, load_prompt
from autoprompt.prompt import ModelRef, Prompt
from autoprompt.prompt_file import PromptFile, read_prompt_file, save_prompt_file
from autoprompt.scoring import Evaluation, evaluate
from autoprompt.task import Example, Task, load_task, read_examples
from autoprompt.version import __version__

__all__ = [
    "AutoPromptError", "Comparison", "DemoStudy", "DemoStudyConfig", "Evaluation", "Example", "LanguageModel", "ModelError", "ModelRef", "Predictor",
    "Prompt", "PromptFile", "PromptFileError", "Task", "TaskError", "TemplateError", "__version__",
    "SearchResult", "compare_methods", "evaluate", "load_model", "load_prompt", "load_task", "optimize", "read_examples",
    "read_prompt_file", "save_prompt_file", "split_examples", "study_demonstrations",
]
