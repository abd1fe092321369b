"""The pure criteria engine: typed facts in, three-valued verdicts with evidence out."""
