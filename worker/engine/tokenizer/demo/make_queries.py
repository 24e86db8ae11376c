#!/usr/bin/env python3
"""Writes queries.jsonl: document-retrieval style queries for the demo job
and the calibration tests, written by the project (no external data).

Each line: {"query": str, "source": str}. Six sources with deliberately
unequal sizes (80, 70, 60, 50, 40, 20 = 320 queries) so that stratified
selection has to fill a remainder. Deterministic: templates x topics in a
fixed order, no randomness.

    python3 make_queries.py > queries.jsonl
"""
import itertools
import json
import sys

SOURCES = {
    "arxiv_figures": (80, [
        "What does Figure {n} show about {t}?",
        "Which method achieves the lowest error on {t} in Table {n}?",
        "How does the proposed model for {t} scale with dataset size?",
        "What is the ablation result for {t} reported in Section {n}?",
    ], ["graph neural networks", "protein folding", "image segmentation",
        "speech recognition", "reinforcement learning", "quantization",
        "retrieval augmentation", "diffusion models", "federated learning",
        "sparse attention", "climate downscaling", "causal inference",
        "few-shot classification", "optical flow", "knowledge distillation",
        "code generation", "tabular data", "time-series forecasting",
        "mixture of experts", "contrastive pretraining"]),
    "scanned_forms": (70, [
        "What is the date written on the {t}?",
        "Who signed the {t}?",
        "What amount is entered in box {n} of the {t}?",
        "Which address appears at the top of the {t}?",
        "Is the checkbox for item {n} marked on the {t}?",
    ], ["invoice", "purchase order", "shipping manifest", "tax return",
        "insurance claim", "lease agreement", "medical intake form",
        "employment application", "customs declaration", "bank statement",
        "utility bill", "delivery receipt", "expense report",
        "warranty card"]),
    "infographics": (60, [
        "According to the infographic, what share of {t} is shown for {y}?",
        "Which region has the highest {t} in the chart?",
        "How many people are affected by {t} according to the poster?",
        "What trend in {t} does the timeline show since {y}?",
        "Which age group reports the lowest {t} in the survey panel?",
        "What source is cited for the {t} figures?",
    ], ["renewable energy use", "smartphone ownership", "obesity rates",
        "coffee consumption", "remote work", "air pollution",
        "literacy rates", "broadband access", "water usage",
        "recycling rates"]),
    "financial_reports": (50, [
        "What was the {t} in fiscal year {y}?",
        "By what percentage did {t} change between {y} and {y2}?",
        "Which segment contributed most to {t} in {y}?",
        "What does note {n} say about {t}?",
        "How is {t} defined in the annual report?",
    ], ["total revenue", "operating margin", "net income",
        "free cash flow", "capital expenditure", "goodwill impairment",
        "deferred tax liabilities", "dividend per share",
        "research and development spending", "inventory turnover"]),
    "energy_reports": (40, [
        "What capacity of {t} was installed in {y}?",
        "Which policy supports {t} in the report?",
        "What are the main risks of {t} listed in chapter {n}?",
        "How much CO2 does {t} avoid per year?",
    ], ["offshore wind", "solar photovoltaics", "grid storage",
        "green hydrogen", "geothermal plants", "heat pumps",
        "nuclear refurbishment", "transmission lines", "biogas",
        "tidal power"]),
    "healthcare_guidelines": (20, [
        "What dosage of {t} does the guideline recommend for adults?",
        "Which contraindications are listed for {t}?",
        "When should a patient with {t} be referred to a specialist?",
        "What follow-up interval is advised after treatment of {t}?",
    ], ["hypertension", "type 2 diabetes", "asthma", "migraine",
        "atrial fibrillation"]),
}

YEARS = ["2019", "2020", "2021", "2022", "2023"]


def queries(count, templates, topics):
    out = []
    for i, (topic, template) in enumerate(itertools.product(topics, templates)):
        if len(out) == count:
            break
        y = YEARS[i % len(YEARS)]
        y2 = YEARS[(i + 2) % len(YEARS)]
        out.append(template.format(t=topic, n=1 + i % 9, y=y, y2=y2))
    if len(out) != count:
        raise SystemExit(f"only {len(out)} queries for {count}")
    return out


def main():
    for source, (count, templates, topics) in SOURCES.items():
        for q in queries(count, templates, topics):
            sys.stdout.write(json.dumps({"query": q, "source": source},
                                        ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
