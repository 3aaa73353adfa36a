//! `factotum dot`: the plan as Graphviz DOT, in Factotum's layout.

use crate::dag::Plan;

/// `digraph "<name>" {`, one `    "<task>"` line per task, one `    "<dep>" -> "<task>"` per edge,
/// `}` without a trailing newline. Quotes and backslashes in names are escaped.
pub fn render(plan: &Plan) -> String {
    let mut out = format!("digraph \"{}\" {{\n", escape(&plan.job_name));
    for &t in &plan.order {
        out.push_str(&format!(
            "    \"{}\"\n",
            escape(&plan.tasks[t as usize].name)
        ));
    }
    for &t in &plan.order {
        let task = &plan.tasks[t as usize];
        for &d in &task.deps {
            out.push_str(&format!(
                "    \"{}\" -> \"{}\"\n",
                escape(&plan.tasks[d as usize].name),
                escape(&task.name)
            ));
        }
    }
    out.push('}');
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factfile::Factfile;
    use crate::template::Vars;

    #[test]
    fn dot_layout_and_escaping() {
        let text = r#"{"schema":"iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0","data":{"name":"my \"job\"","tasks":[
          {"name":"a","executor":"shell","command":"x","arguments":[],"dependsOn":[],"onResult":{"terminateJobWithSuccess":[],"continueJob":[0]}},
          {"name":"b \"q\"","executor":"shell","command":"x","arguments":[],"dependsOn":["a"],"onResult":{"terminateJobWithSuccess":[],"continueJob":[0]}}]}}"#;
        let ff = Factfile::parse(
            text,
            &Vars::new(&serde_json::Value::Null, &Default::default()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            render(&Plan::new(&ff)),
            "digraph \"my \\\"job\\\"\" {\n    \"a\"\n    \"b \\\"q\\\"\"\n    \"a\" -> \"b \\\"q\\\"\"\n}"
        );
    }
}
