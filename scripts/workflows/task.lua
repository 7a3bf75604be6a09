-- The task workflow, step by step, as the seed README describes it: create a
-- sandbox, clone, (apply the task's earlier changes for a follow-up), run the
-- project's setup script if any, run the agent, capture the results, save.
-- The engine destroys the sandbox afterwards whatever happened. Edit freely: with
-- hot reload, tasks started afterwards use the new version.
local steps = require "app.workflow_steps"

return {
    version = "1",
    run = function(run)
        run:step("create sandbox", steps.create_sandbox)
        run:step("clone", steps.clone)
        if run.task.git_patch and run.task.git_patch ~= "" and run.followup then
            run:step("apply previous changes", steps.apply_previous)
        end
        if run.setup_script then
            run:step("setup", steps.setup)
        end
        run:step("run agent", steps.run_agent)
        run:step("capture results", steps.capture)
        run:step("save", steps.save)
    end,
}
