"""Check the config loader's size bounds against the defaults of every config class transformers ships.

    python scripts/check_config_bounds.py

Prints each rejected default (a false alarm to fix in lora_doctor/config_loader.py) and a summary line.
"""

from __future__ import annotations

import warnings

from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from lora_doctor.config_loader import validate_config
from lora_doctor.errors import InvalidConfigError


def main() -> int:
    checked = rejected = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model_type in list(CONFIG_MAPPING.keys()):
            try:
                fields = CONFIG_MAPPING[model_type]().to_dict()
            except Exception:  # a few config classes need arguments
                continue
            checked += 1
            try:
                validate_config(fields, model_type)
            except InvalidConfigError as exc:
                rejected += 1
                print(exc)
    print(f"checked {checked} config classes, rejected {rejected}")
    return 1 if rejected else 0


if __name__ == "__main__":
    raise SystemExit(main())
