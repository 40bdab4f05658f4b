//! TypeScript declarations of a WIT package, for `sluice plugin new --lang ts`: one
//! `declare module 'ns:pkg/interface@version'` per interface, in the conventions the component
//! toolchains (jco, componentize-js) use at run time — records as interfaces with camelCase
//! fields, enums as unions of their kebab-case names, variants as `{ tag, val }`, `option<T>` as
//! `T | undefined`, `list<u8>` as `Uint8Array`, 64-bit integers as `bigint`, functions in
//! camelCase. Generated from the WIT the project is built against (with `wit-parser`, the
//! toolchains' own parser), so the types cannot drift from the contract.

use anyhow::{Context, Result, bail};
use wit_parser::{Docs, Resolve, Type, TypeDefKind, TypeId, TypeOwner};

fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn pascal(name: &str) -> String {
    let c = camel(name);
    let mut chars = c.chars();
    chars.next().map(|f| f.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn doc(out: &mut String, docs: &Docs, indent: &str) {
    if let Some(text) = &docs.contents {
        out.push_str(&format!("{indent}/**\n"));
        for line in text.trim_end().lines() {
            out.push_str(&format!("{indent} * {}\n", line.replace("*/", "*\\/")).replace(" * \n", " *\n"));
        }
        out.push_str(&format!("{indent} */\n"));
    }
}

struct Gen<'a> {
    resolve: &'a Resolve,
    /// Module name per interface, `ns:pkg/name@version`.
    module: std::collections::HashMap<wit_parser::InterfaceId, String>,
}

impl Gen<'_> {
    /// The TypeScript for a WIT type, seen from the module of interface `here`.
    fn ty(&self, t: &Type, here: wit_parser::InterfaceId) -> Result<String> {
        Ok(match t {
            Type::Bool => "boolean".into(),
            Type::U8 | Type::U16 | Type::U32 | Type::S8 | Type::S16 | Type::S32 | Type::F32 | Type::F64 => {
                "number".into()
            }
            Type::U64 | Type::S64 => "bigint".into(),
            Type::Char | Type::String => "string".into(),
            Type::ErrorContext => bail!("error-context has no TypeScript form here"),
            Type::Id(id) => self.named_or_inline(*id, here)?,
        })
    }

    fn named_or_inline(&self, id: TypeId, here: wit_parser::InterfaceId) -> Result<String> {
        let def = &self.resolve.types[id];
        if let (Some(name), TypeOwner::Interface(owner)) = (&def.name, def.owner) {
            return Ok(if owner == here {
                pascal(name)
            } else {
                format!("import('{}').{}", self.module[&owner], pascal(name))
            });
        }
        self.inline(&def.kind, here)
    }

    fn inline(&self, kind: &TypeDefKind, here: wit_parser::InterfaceId) -> Result<String> {
        Ok(match kind {
            TypeDefKind::List(Type::U8) => "Uint8Array".into(),
            TypeDefKind::List(t) => format!("Array<{}>", self.ty(t, here)?),
            TypeDefKind::Option(t) => format!("{} | undefined", self.ty(t, here)?),
            TypeDefKind::Tuple(t) => {
                let parts: Result<Vec<String>> = t.types.iter().map(|t| self.ty(t, here)).collect();
                format!("[{}]", parts?.join(", "))
            }
            TypeDefKind::Type(t) => self.ty(t, here)?,
            other => bail!("a WIT {} has no TypeScript form here", other.as_str()),
        })
    }

    /// `export ...` for one named type of an interface.
    fn declare(&self, out: &mut String, name: &str, id: TypeId, here: wit_parser::InterfaceId) -> Result<()> {
        let def = &self.resolve.types[id];
        doc(out, &def.docs, "  ");
        let name = pascal(name);
        match &def.kind {
            TypeDefKind::Record(r) => {
                out.push_str(&format!("  export interface {name} {{\n"));
                for f in &r.fields {
                    doc(out, &f.docs, "    ");
                    let (ty, optional) = match &f.ty {
                        Type::Id(t) => match &self.resolve.types[*t].kind {
                            TypeDefKind::Option(inner) if self.resolve.types[*t].name.is_none() => {
                                (self.ty(inner, here)?, "?")
                            }
                            _ => (self.ty(&f.ty, here)?, ""),
                        },
                        _ => (self.ty(&f.ty, here)?, ""),
                    };
                    out.push_str(&format!("    {}{optional}: {ty},\n", camel(&f.name)));
                }
                out.push_str("  }\n");
            }
            TypeDefKind::Enum(e) => {
                let cases: Vec<String> = e.cases.iter().map(|c| format!("'{}'", c.name)).collect();
                out.push_str(&format!("  export type {name} = {};\n", cases.join(" | ")));
            }
            TypeDefKind::Variant(v) => {
                let mut cases = Vec::new();
                for c in &v.cases {
                    cases.push(match &c.ty {
                        None => format!("{{ tag: '{}' }}", c.name),
                        Some(t) => format!("{{ tag: '{}', val: {} }}", c.name, self.ty(t, here)?),
                    });
                }
                out.push_str(&format!("  export type {name} =\n    | {};\n", cases.join("\n    | ")));
            }
            // A type used from another interface, or an alias.
            other => out.push_str(&format!("  export type {name} = {};\n", self.inline(other, here)?)),
        }
        Ok(())
    }
}

/// `sluice plugin types`: prints the declarations of `wit`, or of this release's 0.2.0 contract.
pub fn print(wit: Option<&std::path::Path>) -> Result<()> {
    let (text, source) = match wit {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (super::scaffold::WIT_JSON.to_string(), "wit/0.2.0/sluice.wit".to_string()),
    };
    print!("{}", declarations(&text, &source)?);
    Ok(())
}

/// The declarations of every interface of the WIT package in `wit` (one file's text).
pub fn declarations(wit: &str, source: &str) -> Result<String> {
    let mut resolve = Resolve::new();
    let pkg = resolve.push_str("sluice.wit", wit).context("the WIT does not parse")?;
    let package = &resolve.packages[pkg];
    let base = format!("{}:{}", package.name.namespace, package.name.name,);
    let version = package.name.version.as_ref().map(|v| format!("@{v}")).unwrap_or_default();
    let module = package.interfaces.iter().map(|(name, id)| (*id, format!("{base}/{name}{version}"))).collect();
    let g = Gen { resolve: &resolve, module };
    let mut out = format!(
        "// Generated by `sluice plugin types` from {source} ({base}{version}): the plugin\n\
         // contract's types as the component toolchain passes them at run time. Do not edit;\n\
         // a project made by a later Sluice release has the later contract's.\n"
    );
    for (name, id) in &package.interfaces {
        let iface = &resolve.interfaces[*id];
        out.push('\n');
        doc(&mut out, &iface.docs, "");
        out.push_str(&format!("declare module '{base}/{name}{version}' {{\n"));
        for (tname, tid) in &iface.types {
            g.declare(&mut out, tname, *tid, *id)?;
        }
        for (fname, f) in &iface.functions {
            doc(&mut out, &f.docs, "  ");
            let params: Result<Vec<String>> =
                f.params.iter().map(|p| Ok(format!("{}: {}", camel(&p.name), g.ty(&p.ty, *id)?))).collect();
            let result = match &f.result {
                Some(t) => g.ty(t, *id)?,
                None => "void".into(),
            };
            out.push_str(&format!("  export function {}({}): {result};\n", camel(fname), params?.join(", ")));
        }
        out.push_str("}\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_as_typescript() {
        let d = declarations(include_str!("../../../../wit/0.2.0/sluice.wit"), "wit/sluice.wit").unwrap();
        for want in [
            "declare module 'sluice:plugin/types@0.2.0' {",
            "  export interface Event {\n",
            "    eventType: string,\n",
            "    timestampMs: bigint,\n",
            "    source?: string,\n",
            "  export type FailureKind = 'permanent' | 'transient';",
            "    | { tag: 'replacing-merge-tree', val: string | undefined }",
            "    rows: Uint8Array,\n",
            "    rowsJson: Uint8Array,\n",
            "    settings: Array<[string, string]>,\n",
            "declare module 'sluice:plugin/host@0.2.0' {",
            "  export function log(level: Level, message: string, fields: Array<[string, string]>): void;",
            "  export function configGet(key: string): string | undefined;",
            "  export type Manifest = import('sluice:plugin/types@0.2.0').Manifest;",
            "  export function handleJson(payloads: string, events: string): BatchOutput;",
        ] {
            assert!(d.contains(want), "no {want:?} in:\n{d}");
        }
        // The TypeScript twin's copy is this release's (`sluice plugin types > examples/ts/...`).
        assert_eq!(
            include_str!("../../../../examples/ts/sluice-plugin.d.ts"),
            declarations(include_str!("../../../../wit/0.2.0/sluice.wit"), "wit/0.2.0/sluice.wit").unwrap(),
            "examples/ts/sluice-plugin.d.ts is stale: regenerate it with `sluice plugin types`"
        );
    }
}
