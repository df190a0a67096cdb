"""The job system's vocabulary: jobs, errors, messages, settings. No threads, no I/O."""
