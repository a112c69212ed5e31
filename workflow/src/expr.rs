//! The expression language of `if:`, `until:` and `for_each:`: minijinja's expressions (Jinja2
//! syntax), evaluated strictly: a name or attribute that does not exist is an error, not an
//! empty value, so a typo in a condition fails the step instead of quietly taking a branch.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// Whether `source` is an expression, or why not.
pub fn compile(source: &str) -> Result<(), String> {
    environment().compile_expression(source).map(drop).map_err(|err| describe(&err))
}

/// `source` evaluated over `context` (a JSON object: `inputs`, `steps`, `item`, `index`, `round`).
fn evaluate(source: &str, context: &Value) -> Result<minijinja::Value, String> {
    let env = environment();
    let expression = env.compile_expression(source).map_err(|err| describe(&err))?;
    expression.eval(minijinja::Value::from_serialize(context)).map_err(|err| describe(&err))
}

/// The value of `source` over `context`.
pub fn eval(source: &str, context: &Value) -> Result<Value, String> {
    let value = evaluate(source, context)?;
    serde_json::to_value(&value).map_err(|err| format!("{source}: its value cannot be used: {err}"))
}

/// Whether `source` holds over `context`: Jinja2's truth (false, none, 0, "" and empty lists are false).
pub fn holds(source: &str, context: &Value) -> Result<bool, String> {
    Ok(evaluate(source, context)?.is_true())
}

/// The items of a `for_each:` expression, which must evaluate to a list.
pub fn items(source: &str, context: &Value) -> Result<Vec<Value>, String> {
    match eval(source, context)? {
        Value::Array(items) => Ok(items),
        other => Err(format!("for_each: {source} is {}, not a list", kind(&other))),
    }
}

/// `template` (`echo {{ inputs.kind }}`) filled from `context`, strictly: a name that does not
/// exist is an error. Values are written as they are, not HTML-escaped.
pub fn render(template: &str, context: &Value) -> Result<String, String> {
    fill(template, &Scope::of(context))
}

/// A context made once for the templates of many tasks: minijinja's own value, shared, so that
/// the tasks of a fan-out read one copy of the run instead of a copy each.
#[derive(Clone, Debug)]
pub struct Scope(minijinja::Value);

impl Scope {
    /// `context` (a JSON object) as templates read it.
    pub fn of(context: &Value) -> Scope {
        Scope(minijinja::Value::from_serialize(context))
    }

    /// This scope with `fields` (a JSON object) over it: a name in both reads `fields`' (the
    /// last of `merge_maps`' sources wins).
    pub fn with(&self, fields: &Value) -> Scope {
        Scope(minijinja::value::merge_maps([self.0.clone(), minijinja::Value::from_serialize(fields)]))
    }
}

/// [`render`] over a [`Scope`].
pub fn fill(template: &str, scope: &Scope) -> Result<String, String> {
    if !template.contains("{{") && !template.contains("{%") {
        return Ok(template.to_owned());
    }
    let env = environment();
    let template = env.template_from_str(template).map_err(|err| describe(&err))?;
    template.render(&scope.0).map_err(|err| describe(&err))
}

/// The names an expression reads, as dotted paths (`steps.plan.outputs`), or why it does not compile.
pub fn names(source: &str) -> Result<Vec<String>, String> {
    let env = environment();
    let expression = env.compile_expression(source).map_err(|err| describe(&err))?;
    let mut names: Vec<String> = expression.undeclared_variables(true).into_iter().collect();
    names.sort();
    Ok(names)
}

/// The names a template (`echo {{ inputs.kind }}`) reads, or why it does not compile.
pub fn template_names(source: &str) -> Result<Vec<String>, String> {
    let env = environment();
    let template = env.template_from_str(source).map_err(|err| describe(&err))?;
    let mut names: Vec<String> = template.undeclared_variables(true).into_iter().collect();
    names.sort();
    Ok(names)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "none",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn describe(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_scope_with_fields_reads_them_over_its_own_and_stays_strict() {
        let run = Scope::of(&json!({"inputs": {"kind": "bug"}, "round": 0}));
        let item = run.with(&json!({"item": "a.rs", "round": 2}));
        assert_eq!(fill("{{ inputs.kind }} {{ item }} {{ round }}", &item), Ok("bug a.rs 2".into()));
        assert_eq!(fill("{{ round }}", &run), Ok("0".into()), "the shared scope is not changed");
        assert!(fill("{{ item }}", &run).is_err(), "a name in no scope is an error");
        assert!(fill("{{ inputs.kindd }}", &item).is_err());
    }

    #[test]
    fn conditions_read_inputs_and_steps_and_a_missing_name_is_an_error() {
        let context = json!({
            "inputs": {"kind": "bug", "files": ["a.rs", "b.rs"]},
            "steps": {"classify": {"state": "succeeded", "exit_code": 0, "outputs": {"label": "bug"}}},
        });
        assert_eq!(holds("steps.classify.outputs.label == \"bug\"", &context), Ok(true));
        assert_eq!(holds("inputs.kind != 'bug' or steps.classify.exit_code != 0", &context), Ok(false));
        assert_eq!(holds("steps['classify'].state == 'succeeded'", &context), Ok(true));
        assert_eq!(items("inputs.files", &context), Ok(vec![json!("a.rs"), json!("b.rs")]));
        assert!(holds("steps.missing.state == 'failed'", &context).is_err(), "a missing step is an error");
        assert!(holds("inputs.kindd == 'bug'", &context).is_err(), "a typo is an error, not a false");
        assert!(items("inputs.kind", &context).unwrap_err().contains("not a list"));
        assert!(compile("steps.x ==").is_err());
        assert!(compile("steps.x.exit_code == 0 and round < 3").is_ok());
    }
}
