//! The template Gatehouse plugin: copy this crate to start a new one.
//!
//! It implements two hooks: `on-statement` (denies statements that touch a table listed in its
//! config) and `on-rows` (replaces the values of columns listed in its config with `****`).
//! Remove the hooks you do not need: `describe` lists only the hooks the type implements, and
//! Gatehouse calls only those.
//!
//! Config (the `config` table of the plugin's `[[plugin]]` entry), e.g.
//! `{"deny_tables": ["public.secrets"], "mask_columns": ["password"]}`.

use gatehouse_plugin_sdk::rows::{BatchView, CellValue, RowsOutput};
use gatehouse_plugin_sdk::{
    Config, OnRows, OnStatement, Plugin, RowBatch, RowsResult, SessionInfo, Statement, Verdict, deny,
    export_plugin, mask,
};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplateConfig {
    /// Tables (as the statement names them) that may not be read or written.
    pub deny_tables: Vec<String>,
    /// Result columns whose values are replaced with `****`.
    pub mask_columns: Vec<String>,
}

pub struct Template {
    config: TemplateConfig,
}

impl Plugin for Template {
    const NAME: &'static str = "template";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &Config) -> Result<Self, String> {
        Ok(Template {
            config: config.parse()?,
        })
    }
}

impl OnStatement for Template {
    fn on_statement(&self, _session: &SessionInfo, stmt: &Statement) -> Result<Verdict, String> {
        let touched = stmt.tables_read.iter().chain(&stmt.tables_written);
        match touched.into_iter().find(|t| self.config.deny_tables.contains(t)) {
            Some(table) => Ok(deny(format!("table {table} is off limits"))),
            None => Ok(Verdict::Allow),
        }
    }
}

impl OnRows for Template {
    fn on_rows(&self, _session: &SessionInfo, batch: &RowBatch) -> Result<RowsResult, String> {
        let view = BatchView::new(batch)?;
        // Decide per column once, not per cell.
        let masked: Vec<bool> = view
            .columns()
            .iter()
            .map(|c| self.config.mask_columns.contains(&c.name))
            .collect();
        let mut out = RowsOutput::new();
        for cell in view.cells() {
            let wanted = masked.get(cell.column as usize).copied().unwrap_or(false);
            if wanted && matches!(cell.value, CellValue::Text(_)) {
                out.replace(cell.row, cell.column, mask::full());
                out.finding("masked-column", view.column_name(cell.column), 1);
            }
        }
        Ok(out.finish())
    }
}

export_plugin!(Template);

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_plugin_sdk::rows::batch_from_rows;

    #[test]
    fn describes_its_hooks() {
        let info = gatehouse_plugin_sdk::describe!(Template);
        assert_eq!(info.name, "template");
        assert_eq!(
            info.hooks,
            [
                gatehouse_plugin_sdk::Hook::OnStatement,
                gatehouse_plugin_sdk::Hook::OnRows
            ]
        );
    }

    #[test]
    fn masks_configured_columns() {
        let p = Template::new(&Config::from_json(r#"{"mask_columns": ["password"]}"#)).unwrap();
        let batch = batch_from_rows(&["name", "password"], &[vec![Some("alice"), Some("hunter2")]]);
        let session = gatehouse_plugin_sdk::testing::session();
        let r = p.on_rows(&session, &batch).unwrap();
        assert_eq!(r.edits.len(), 1);
        assert_eq!(r.edits[0].column, 1);
        assert_eq!(r.findings[0].count, 1);
    }
}
