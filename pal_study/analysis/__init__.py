"""What a study's record says: paired statistics, claims and verdicts, ranks, parameter importance,
figures, the report in every format and the export of the best configs. Reads a study's record
(its Optuna journal, summary and tracking store); never imports the study engine."""
