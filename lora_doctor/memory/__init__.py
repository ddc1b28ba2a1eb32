"""The analytic memory model: closed-form terms from an ArchSpec and PlanSettings (pure, no torch)."""
