"""KFP components: one per stage, each a typed signature around one library call."""
