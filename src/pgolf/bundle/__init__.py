"""The single-file train_gpt.py: the rules that make it possible (rules), the module graph
(graph), joining modules into one namespace (join), the minified and self-extracting forms
(pack), and the build (build). Never bundled itself, so it may re-export."""

from pgolf.bundle.build import (BUNDLE_ENTRY, BUNDLE_MAIN_CALL, READABLE_NAME, build_bundle, bundle_for_config,
                                bundle_modules, bundle_preset_text, export_bundle, shipped_files, shipped_source,
                                write_bundle)
from pgolf.bundle.graph import module_graph
from pgolf.bundle.pack import build_compressed_bundle, minify_source
from pgolf.bundle.rules import (BUNDLE_MARK, BundleError, ModuleSources, bundle_package_modules, check_rules,
                                check_sources)
