"""Recipe → trained student: data, losses, trainers, evaluation."""
