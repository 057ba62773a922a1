"""pytest plugin for uffdharness (fixtures and markers land with the scenario catalogue)."""
