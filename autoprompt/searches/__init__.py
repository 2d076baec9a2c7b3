"""The search methods, by name. A method is one module here and one line below: its config
dataclass, its search function and how it says what it found so far (searches.base.Method)."""

from autoprompt.searches import hybrid, lora, manual, soft, template, trigger
from autoprompt.searches.base import Context, Found, Method, RunSettings, config_dict, config_from, fields_of
from autoprompt.searches.lora import LoraTuningConfig
from autoprompt.searches.soft import SoftPromptConfig
from autoprompt.searches.template import TemplateSearchConfig
from autoprompt.searches.trigger import TriggerSearchConfig

METHODS: dict[str, Method] = {m.name: m for m in (
    trigger.METHOD,
    template.METHOD,
    hybrid.METHOD,
    manual.METHOD,
    soft.METHOD,
    lora.METHOD,
)}

__all__ = ["METHODS", "Context", "Found", "LoraTuningConfig", "Method", "RunSettings", "SoftPromptConfig",
           "TemplateSearchConfig", "TriggerSearchConfig", "config_dict", "config_from", "fields_of"]
