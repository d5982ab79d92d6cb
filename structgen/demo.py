"""The main job, end to end: real generations on the embedded SmolLM2, printed as validated objects.

Run with ``python -m structgen.demo`` (or ``make demo`` on a fresh machine).
"""

from __future__ import annotations

import time
from datetime import date
from enum import Enum
from typing import Literal, Optional

from pydantic import BaseModel, Field

import structgen


class Character(BaseModel):
    name: str
    species: Literal["human", "saiyan", "namekian"]
    age: int = Field(ge=0)
    attacks: list[str]


class Priority(str, Enum):
    low = "low"
    medium = "medium"
    high = "high"


class Ticket(BaseModel):
    title: str = Field(max_length=60)
    priority: Priority
    component: Optional[str] = None
    due: Optional[date] = None


class LineItem(BaseModel):
    description: str
    quantity: int = Field(ge=1, le=1000)
    unit_price: float = Field(ge=0)


class Invoice(BaseModel):
    vendor: str
    items: list[LineItem] = Field(max_length=5)
    currency: Literal["EUR", "USD", "GBP"]


# (title, output type, prompt, max_tokens, whitespace)
JOBS = [
    ("pydantic model", Character, "Describe Goku from Dragon Ball Z.", 256, "compact"),
    ("nested model from text", Invoice,
     "Extract the invoice: ACME GmbH billed 3 widgets at 4.50 EUR each and 1 gearbox at 120 EUR.",
     256, "compact"),
    ("enum + optional + date", Ticket,
     "File a ticket: the login page crashes on Safari since the last deploy, fix by 2026-12-01.",
     256, "compact"),
    # With free whitespace this model pretty-prints the list and then repeats "Saturn" forever;
    # the budget guarantee closes the list inside 60 tokens.
    ("a looping list cut by the budget", list[str], "List the planets of the solar system.", 60,
     "flexible"),
    ("raw JSON schema", {"type": "object", "properties": {
        "city": {"type": "string"}, "population_millions": {"type": "number", "minimum": 0}},
        "required": ["city", "population_millions"]},
     "What is the largest city in Japan?", 64, "compact"),
    ("regex", structgen.Regex(r"\+[0-9]{1,3} [0-9]{3} [0-9]{3} [0-9]{4}"),
     "Write a phone number in international format.", 32, "compact"),
]


def main() -> None:
    started = time.perf_counter()
    model = structgen.load_model()
    print(f"loaded {model.name} ({model.hf_model.num_parameters() / 1e6:.0f}M parameters, "
          f"context {model.context_length}) in {time.perf_counter() - started:.1f} s\n")
    for title, output_type, prompt, max_tokens, whitespace in JOBS:
        result = structgen.generate_with_details(output_type, prompt, model=model,
                                                 max_tokens=max_tokens, whitespace=whitespace)
        name = output_type.__name__ if isinstance(output_type, type) else type(output_type).__name__
        if hasattr(output_type, "__origin__"):
            name = str(output_type)
        print(f"== {title}: {name} (max_tokens={max_tokens}, whitespace={whitespace})")
        print(f"   prompt: {prompt}")
        print(f"   value:  {result.value!r}")
        print(f"   {result.completion_tokens} tokens, stop={result.stop_reason}, "
              f"compile {1000 * result.compile_seconds:.0f} ms, "
              f"decode {result.seconds:.2f} s ({result.ms_per_token:.1f} ms/token)\n")
    print(f"all answers parsed and validated; total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
