"""Training-time objectives, one module per method: DPO / f-DPO / RPO (:mod:`.dpo`), BCO
(:mod:`.bco`), reward-model ensembles (:mod:`.reward_model`), refusal-token SFT (:mod:`.refusal`), SCoRe (:mod:`.score`); their pure losses (:mod:`.losses`)
and the plumbing every trainer shares (:mod:`.common`)."""
