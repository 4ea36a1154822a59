-- Where a classification ran, beside the model that made it: the model id (name@version) keys the rows and
-- stays the same whichever backend and precision ran it, so a message redelivered to a machine that chose
-- another backend writes nothing new (ON CONFLICT), and the comparison views see one version, not two.
-- NULL for rows written before this column existed.
ALTER TABLE prediction_results ADD COLUMN backend text, ADD COLUMN "precision" text;
