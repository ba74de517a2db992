"""Data and training diagnostics, one module per method: CHES / LN-CHES pair scores
(:mod:`.ches`), gradient entanglement (:mod:`.entanglement`) and BCO's underlying distribution
matching (:mod:`.udm`)."""
