"""Generate the bundled BEIR-layout collection ``tiny-science`` (deterministic; seed 13).

The texts are synthetic: sentences assembled from hand-written topic vocabularies, so the collection
has no licence strings attached and is small enough to ship. Relevance is known by construction:
a query is built from the key terms of one (topic, facet) pair; documents written about that same pair
are graded 2, documents on the same topic but another facet are graded 1.

Run:  python scripts/make_tiny_collection.py inpars_ray/data/collections/tiny-science
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TOPICS: dict[str, dict[str, list[str]]] = {
    "coral reefs": {
        "bleaching": ["bleaching", "thermal", "stress", "symbiotic", "algae", "zooxanthellae"],
        "restoration": ["restoration", "transplant", "nursery", "fragments", "larval", "settlement"],
        "acidification": ["acidification", "carbonate", "calcification", "aragonite", "ph", "skeleton"],
    },
    "malaria": {
        "vaccine": ["vaccine", "sporozoite", "antibody", "trial", "efficacy", "booster"],
        "resistance": ["resistance", "artemisinin", "mutation", "kelch13", "parasite", "clearance"],
        "vectors": ["mosquito", "anopheles", "bednet", "insecticide", "larvae", "breeding"],
    },
    "batteries": {
        "lithium": ["lithium", "cathode", "electrolyte", "dendrite", "anode", "capacity"],
        "solid-state": ["solid", "ceramic", "sulfide", "interface", "conductivity", "separator"],
        "recycling": ["recycling", "cobalt", "leaching", "hydrometallurgy", "recovery", "scrap"],
    },
    "sleep": {
        "circadian": ["circadian", "melatonin", "clock", "light", "phase", "suprachiasmatic"],
        "apnea": ["apnea", "airway", "snoring", "oxygen", "cpap", "obstruction"],
        "memory": ["memory", "consolidation", "hippocampus", "spindles", "recall", "slow-wave"],
    },
    "volcanoes": {
        "eruptions": ["eruption", "magma", "explosive", "ash", "plume", "pyroclastic"],
        "monitoring": ["seismic", "tremor", "deformation", "gps", "gas", "forecast"],
        "climate": ["aerosol", "sulfate", "stratosphere", "cooling", "volcanic", "winter"],
    },
    "antibiotics": {
        "discovery": ["discovery", "soil", "actinomycetes", "screening", "compound", "natural"],
        "stewardship": ["stewardship", "prescribing", "hospital", "guideline", "overuse", "audit"],
        "phages": ["phage", "bacteriophage", "lytic", "cocktail", "therapy", "host"],
    },
    "galaxies": {
        "dark matter": ["dark", "halo", "rotation", "curve", "lensing", "mass"],
        "black holes": ["black", "hole", "accretion", "quasar", "jet", "supermassive"],
        "star formation": ["star", "formation", "molecular", "cloud", "collapse", "protostar"],
    },
    "soil": {
        "carbon": ["carbon", "sequestration", "organic", "humus", "tillage", "cover"],
        "microbiome": ["microbiome", "fungi", "mycorrhizal", "rhizosphere", "nitrogen", "fixation"],
        "erosion": ["erosion", "runoff", "terraces", "sediment", "rainfall", "slope"],
    },
}
FILLER = (
    "the study reports results from a cohort of samples collected over several years . we observed "
    "a consistent effect across sites , although variance was high . previous work suggested a weaker "
    "relation , and our analysis controls for seasonal factors . these findings have implications for "
    "policy and for future measurements . a larger trial is planned to confirm the estimate . the data "
    "and methods are described in the supplementary material . limitations include sample size and "
    "the observational design ."
).split()
QUESTION_FORMS = ["what is known about {}", "how does {} affect {}", "{} and {}", "evidence for {} in {}",
                  "role of {} in {}", "{} {} {}"]


def sentence(rng: random.Random, terms: list[str], n_terms: int, length: int) -> str:
    words = rng.sample(FILLER, length) + rng.sample(terms, min(n_terms, len(terms)))
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


def build(out: Path, seed: int = 13) -> None:
    rng = random.Random(seed)
    docs, queries, qrels = [], [], []
    pairs = [(t, f) for t in TOPICS for f in TOPICS[t]]
    doc_pair: dict[str, tuple[str, str]] = {}
    n = 0
    for topic, facet in pairs:
        for _ in range(12):
            n += 1
            doc_id = f"d{n:04d}"
            terms = TOPICS[topic][facet] + topic.split()
            other_t, other_f = rng.choice(pairs)
            body = [sentence(rng, terms, rng.randint(1, 3), rng.randint(8, 14)) for _ in range(rng.randint(2, 5))]
            if rng.random() < 0.5:  # a distractor sentence from another topic
                body.insert(rng.randrange(len(body) + 1), sentence(rng, TOPICS[other_t][other_f], 2, 8))
            title = f"{facet.capitalize()} in {topic}" if rng.random() < 0.7 else ""
            docs.append({"_id": doc_id, "title": title, "text": " ".join(body), "metadata": {}})
            doc_pair[doc_id] = (topic, facet)
    for q, (topic, facet) in enumerate(pairs * 3, start=1):
        keys = rng.sample(TOPICS[topic][facet], 3)
        form = rng.choice(QUESTION_FORMS)
        text = form.format(*keys[: form.count("{}")])
        queries.append({"_id": f"q{q:03d}", "text": text, "metadata": {}})
        for doc_id, (t, f) in doc_pair.items():
            if (t, f) == (topic, facet):
                qrels.append((f"q{q:03d}", doc_id, 2))
            elif t == topic and rng.random() < 0.25:  # partially judged: not every same-topic doc
                qrels.append((f"q{q:03d}", doc_id, 1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    with (out / "corpus.jsonl").open("w") as fh:
        for d in docs:
            fh.write(json.dumps(d) + "\n")
    with (out / "queries.jsonl").open("w") as fh:
        for qd in queries:
            fh.write(json.dumps(qd) + "\n")
    # first two thirds of the queries are "train", the rest "test" (BEIR has splits; so do we)
    split_at = (2 * len(queries)) // 3
    train_ids = {qd["_id"] for qd in queries[:split_at]}
    for split in ("train", "test"):
        with (out / "qrels" / f"{split}.tsv").open("w") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qid, did, rel in qrels:
                if (qid in train_ids) == (split == "train"):
                    fh.write(f"{qid}\t{did}\t{rel}\n")


if __name__ == "__main__":
    build(Path(sys.argv[1]))
