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
    if !template.contains("{{") && !template.contains("{%") {
        return Ok(template.to_owned());
    }
    let env = environment();
    let template = env.template_from_str(template).map_err(|err| describe(&err))?;
    template.render(minijinja::Value::from_serialize(context)).map_err(|err| describe(&err))
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
