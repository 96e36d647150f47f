//! The command line of `env` (GNU coreutils 9.1): which options change the environment and the
//! working directory of the program it starts, and which program that is.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::CheckError;

/// The changes that `env [OPTION]... [-] [NAME=VALUE]... [COMMAND [ARG]...]` makes before it
/// starts COMMAND, in the order `env` applies them: clear, unset, assign, change directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvCommand {
    /// `-i`, `--ignore-environment` or a lone `-`: start from an empty environment.
    pub clears_environment: bool,
    /// The names of `-u NAME` and `--unset=NAME`.
    pub unset: Vec<OsString>,
    /// The `NAME=VALUE` words.
    pub assignments: Vec<(OsString, OsString)>,
    /// The directory of `-C DIR` or `--chdir=DIR`. The last one given counts.
    pub directory: Option<OsString>,
    /// The program and its arguments, empty when `env` only prints the environment.
    pub command: Vec<OsString>,
}

impl EnvCommand {
    /// Applies the clearing, `-u` and `NAME=VALUE` of `env` to `environment`.
    pub fn apply(&self, environment: &mut BTreeMap<OsString, OsString>) {
        if self.clears_environment {
            environment.clear();
        }
        for name in &self.unset {
            environment.remove(name);
        }
        for (name, value) in &self.assignments {
            environment.insert(name.clone(), value.clone());
        }
    }
}

/// Parses the arguments of `env`. `environment` is the environment `env` starts with, which
/// `${NAME}` in a `-S` string reads.
///
/// Options end at the first word that is not one, as in `env`, which stops option parsing
/// there (`+` in its getopt string).
pub fn parse(
    arguments: &[OsString],
    environment: &BTreeMap<OsString, OsString>,
) -> Result<EnvCommand, CheckError> {
    let mut parsed = EnvCommand::default();
    let mut words: Vec<OsString> = arguments.to_vec();
    let mut index = 0;
    while index < words.len() {
        let word = words[index].as_bytes().to_vec();
        if word == b"--" {
            index += 1;
            break;
        }
        if word == b"-" || !word.starts_with(b"-") {
            break;
        }
        if let Some(long) = word.strip_prefix(b"--") {
            let (name, value) = match long.iter().position(|&b| b == b'=') {
                Some(equals) => (&long[..equals], Some(&long[equals + 1..])),
                None => (long, None),
            };
            let mut value = value.map(|bytes| OsStr::from_bytes(bytes).to_os_string());
            let mut required = |index: &mut usize| -> Result<OsString, CheckError> {
                if let Some(value) = value.take() {
                    return Ok(value);
                }
                *index += 1;
                words.get(*index).cloned().ok_or_else(|| {
                    CheckError::new(format!(
                        "env --{} needs a value",
                        String::from_utf8_lossy(name)
                    ))
                })
            };
            match name {
                b"ignore-environment" => parsed.clears_environment = true,
                b"null"
                | b"debug"
                | b"list-signal-handling"
                | b"block-signal"
                | b"default-signal"
                | b"ignore-signal" => {}
                b"unset" => {
                    let name = required(&mut index)?;
                    parsed.unset.push(name);
                }
                b"chdir" => parsed.directory = Some(required(&mut index)?),
                b"split-string" => {
                    let text = required(&mut index)?;
                    let split = split_string(&text, environment)?;
                    words.splice(index + 1..index + 1, split);
                }
                b"help" | b"version" => {
                    return Err(CheckError::new(format!(
                        "env --{} starts no program, so there is nothing to check",
                        String::from_utf8_lossy(name)
                    )))
                }
                _ => return Err(unknown_option(&words[index])),
            }
            index += 1;
            continue;
        }

        // A cluster of short options, such as `-iu NAME` or `-C/tmp`.
        let mut position = 1;
        while position < word.len() {
            let letter = word[position];
            let rest = &word[position + 1..];
            let value = |index: &mut usize| -> Result<OsString, CheckError> {
                if !rest.is_empty() {
                    return Ok(OsStr::from_bytes(rest).to_os_string());
                }
                *index += 1;
                words.get(*index).cloned().ok_or_else(|| {
                    CheckError::new(format!("env -{} needs a value", letter as char))
                })
            };
            match letter {
                b'i' => parsed.clears_environment = true,
                b'0' | b'v' => {}
                b'u' => {
                    let name = value(&mut index)?;
                    parsed.unset.push(name);
                    break;
                }
                b'C' => {
                    parsed.directory = Some(value(&mut index)?);
                    break;
                }
                b'S' => {
                    let text = value(&mut index)?;
                    let split = split_string(&text, environment)?;
                    words.splice(index + 1..index + 1, split);
                    break;
                }
                _ => return Err(unknown_option(&words[index])),
            }
            position += 1;
        }
        index += 1;
    }

    if words.get(index).is_some_and(|word| word == "-") {
        parsed.clears_environment = true;
        index += 1;
    }
    while let Some(word) = words.get(index) {
        let bytes = word.as_bytes();
        let Some(equals) = bytes.iter().position(|&b| b == b'=') else {
            break;
        };
        parsed.assignments.push((
            OsStr::from_bytes(&bytes[..equals]).to_os_string(),
            OsStr::from_bytes(&bytes[equals + 1..]).to_os_string(),
        ));
        index += 1;
    }
    parsed.command = words.split_off(index.min(words.len()));
    if parsed.directory.is_some() && parsed.command.is_empty() {
        return Err(CheckError::new(
            "env -C needs a command after the directory, as env itself requires",
        ));
    }
    Ok(parsed)
}

fn unknown_option(word: &OsStr) -> CheckError {
    CheckError::new(format!(
        "env option {:?} is not understood by envproxy check; check the command that env \
         starts instead",
        word.to_string_lossy()
    ))
}

/// Splits the string of `env -S` into words as `env` does: at blanks outside quotes, with
/// `'...'`, `"..."`, the backslash escapes of `env` and `${NAME}` expanded from `environment`
/// (outside single quotes). A `#` that starts a word ends the string, as does `\c`.
pub fn split_string(
    text: &OsStr,
    environment: &BTreeMap<OsString, OsString>,
) -> Result<Vec<OsString>, CheckError> {
    let invalid = |what: &str| {
        CheckError::new(format!(
            "env -S {:?}: {what}",
            text.to_string_lossy().into_owned()
        ))
    };
    let bytes = text.as_bytes();
    let mut words = Vec::new();
    let mut word: Option<Vec<u8>> = None;
    let mut quote: Option<u8> = None;
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        index += 1;
        match (quote, byte) {
            (None, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r') => {
                words.extend(word.take());
            }
            (None, b'#') if word.is_none() => break,
            (None, b'\'' | b'"') => {
                quote = Some(byte);
                word.get_or_insert_with(Vec::new);
            }
            (Some(open), _) if byte == open => quote = None,
            (Some(b'\''), b'\\') if matches!(bytes.get(index), Some(b'\\' | b'\'')) => {
                word.get_or_insert_with(Vec::new).push(bytes[index]);
                index += 1;
            }
            (Some(b'\''), _) => word.get_or_insert_with(Vec::new).push(byte),
            (_, b'\\') => {
                let Some(&escaped) = bytes.get(index) else {
                    return Err(invalid("it ends with a backslash"));
                };
                index += 1;
                let literal = match escaped {
                    b'c' if quote.is_some() => {
                        return Err(invalid("`\\c` must not appear inside quotes"))
                    }
                    b'c' => break,
                    b'_' if quote.is_none() => {
                        words.extend(word.take());
                        continue;
                    }
                    b'_' => b' ',
                    b'"' | b'#' | b'$' | b'\'' | b'\\' => escaped,
                    b'f' => b'\x0c',
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => b'\x0b',
                    other => {
                        return Err(invalid(&format!(
                            "invalid backslash escape `\\{}`",
                            other as char
                        )))
                    }
                };
                word.get_or_insert_with(Vec::new).push(literal);
            }
            (_, b'$') => {
                let name_end = (bytes.get(index) == Some(&b'{'))
                    .then(|| bytes[index..].iter().position(|&b| b == b'}'))
                    .flatten()
                    .ok_or_else(|| invalid("only ${NAME} is expanded; write `\\$` for a `$`"))?;
                let name = &bytes[index + 1..index + name_end];
                let value = environment
                    .get(OsStr::from_bytes(name))
                    .map(|value| value.as_bytes().to_vec())
                    .unwrap_or_default();
                word.get_or_insert_with(Vec::new).extend(value);
                index += name_end + 1;
            }
            _ => word.get_or_insert_with(Vec::new).push(byte),
        }
    }
    if quote.is_some() {
        return Err(invalid("a quote is not closed"));
    }
    words.extend(word.take());
    Ok(words.into_iter().map(OsString::from_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn environment(pairs: &[(&str, &str)]) -> BTreeMap<OsString, OsString> {
        pairs
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value)))
            .collect()
    }

    fn parse_words(list: &[&str]) -> Result<EnvCommand, CheckError> {
        parse(&words(list), &BTreeMap::new())
    }

    #[test]
    fn assignments_and_unset_are_recorded() {
        let parsed =
            parse_words(&["-u", "B", "-uC", "--unset=D", "A=1", "python3", "x.py"]).unwrap();
        assert!(!parsed.clears_environment);
        assert_eq!(parsed.unset, words(&["B", "C", "D"]));
        assert_eq!(
            parsed.assignments,
            vec![(OsString::from("A"), OsString::from("1"))]
        );
        assert_eq!(parsed.command, words(&["python3", "x.py"]));
    }

    #[test]
    fn clearing_forms() {
        for list in [
            &["-i", "node"][..],
            &["-", "node"],
            &["--ignore-environment", "node"],
            &["-vi", "node"],
        ] {
            let parsed = parse_words(list).unwrap();
            assert!(parsed.clears_environment, "{list:?}");
            assert_eq!(parsed.command, words(&["node"]), "{list:?}");
        }
    }

    #[test]
    fn options_end_at_first_other_word() {
        let parsed = parse_words(&["A=1", "-i", "prog"]).unwrap();
        assert!(!parsed.clears_environment);
        assert_eq!(parsed.command, words(&["-i", "prog"]));

        let parsed = parse_words(&["--", "-u", "prog"]).unwrap();
        assert_eq!(parsed.command, words(&["-u", "prog"]));
    }

    #[test]
    fn directory_forms() {
        for list in [
            &["-C", "/srv", "prog"][..],
            &["-C/srv", "prog"],
            &["--chdir=/srv", "prog"],
            &["--chdir", "/srv", "prog"],
            &["-iC/srv", "prog"],
        ] {
            let parsed = parse_words(list).unwrap();
            assert_eq!(parsed.directory, Some(OsString::from("/srv")), "{list:?}");
            assert_eq!(parsed.command, words(&["prog"]), "{list:?}");
        }
        let error = parse_words(&["-C", "/srv"]).unwrap_err();
        assert!(error.to_string().contains("needs a command"), "{error}");
    }

    #[test]
    fn split_string_options_are_parsed_again() {
        let parsed = parse_words(&["-S", "-u LD_PRELOAD perl -w", "script.pl"]).unwrap();
        assert_eq!(parsed.unset, words(&["LD_PRELOAD"]));
        assert_eq!(parsed.command, words(&["perl", "-w", "script.pl"]));

        let parsed = parse_words(&["-Spython3 -E"]).unwrap();
        assert_eq!(parsed.command, words(&["python3", "-E"]));

        let parsed = parse_words(&["--split-string=A=1 node", "app.js"]).unwrap();
        assert_eq!(parsed.assignments.len(), 1);
        assert_eq!(parsed.command, words(&["node", "app.js"]));
    }

    #[test]
    fn split_string_quotes_escapes_and_expansion() {
        let variables = environment(&[("HOME", "/home/u")]);
        let cases: [(&str, &[&str]); 7] = [
            ("python3 -E", &["python3", "-E"]),
            ("'a b' \"c d\"", &["a b", "c d"]),
            ("a\\_b", &["a", "b"]),
            ("\"a\\_b\"", &["a b"]),
            ("x ${HOME}/y '${HOME}'", &["x", "/home/u/y", "${HOME}"]),
            ("perl -w # comment", &["perl", "-w"]),
            ("a \\c b", &["a"]),
        ];
        for (text, expected) in cases {
            let split = split_string(OsStr::new(text), &variables).unwrap();
            assert_eq!(split, words(expected), "{text}");
        }
        for text in ["'open", "a\\q", "$HOME", "ends\\"] {
            let error = split_string(OsStr::new(text), &variables).unwrap_err();
            assert!(error.to_string().starts_with("env -S"), "{text}: {error}");
        }
    }

    #[test]
    fn unknown_option_is_error() {
        let error = parse_words(&["--frobnicate", "prog"]).unwrap_err();
        assert!(error.to_string().contains("not understood"), "{error}");
    }

    #[test]
    fn apply_in_env_order() {
        let mut variables = environment(&[("A", "1"), ("LD_PRELOAD", "/l.so"), ("PATH", "/bin")]);
        let parsed = parse_words(&["-u", "LD_PRELOAD", "A=2", "B=3", "prog"]).unwrap();
        parsed.apply(&mut variables);
        assert_eq!(
            variables,
            environment(&[("A", "2"), ("B", "3"), ("PATH", "/bin")])
        );

        let parsed = parse_words(&["-i", "C=4", "prog"]).unwrap();
        parsed.apply(&mut variables);
        assert_eq!(variables, environment(&[("C", "4")]));
    }
}
