"""Where contexts and gold truth come from: prompt sets with gold rewards, verifiable tasks."""
