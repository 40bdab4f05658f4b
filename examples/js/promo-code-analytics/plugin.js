// The component's entry module: the only one that imports the host interface.
import * as host from 'sluice:plugin/host@0.2.0';
import { exportPlugin } from '../../../sdk/js/sluice_sdk.js';
import { plugin } from './handler.js';

export const handler = exportPlugin(plugin, host);
