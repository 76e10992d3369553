"""The read path: a ReadPlan (what to read) -> ONE SQL statement whose result is the JSON body."""
